"""Test helpers that ship with the package: tiny offline models and fakes other tests reuse."""
