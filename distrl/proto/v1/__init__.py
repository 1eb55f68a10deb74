# Generated from protos/distrl/v1 by `make proto`. Do not edit.
