"""Test support code: helpers shared by the integration and end-to-end tests."""
