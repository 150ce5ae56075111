"""pcipassd: declarative boot-time PCI passthrough."""

__version__ = "0.1.0"
