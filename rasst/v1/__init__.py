"""Generated from proto/rasst/v1 by `make proto`; do not edit."""
