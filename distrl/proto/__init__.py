"""Generated protocol buffer and gRPC stubs (see protos/ and `make proto`)."""
