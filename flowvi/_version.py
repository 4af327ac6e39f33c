"""The package version, in one place: `flowvi.io`, the ArviZ export and the CLI read it here."""

__version__ = "0.6.0"
