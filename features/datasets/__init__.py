"""One module per dataset family: what its converter supplies to `features.convert.convert`."""
