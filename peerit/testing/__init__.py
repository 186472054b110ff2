"""Test helpers: fakes behind the project's interfaces and real-process launchers."""
