"""The package version: package.xml and setup.py read the same number (a test checks both)."""
__version__ = "0.1.0"
