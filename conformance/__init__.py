"""Conformance suites: conformance/api (Barbican v1 API), conformance/rbac (role x operation),
conformance/backend (PKCS#11 backend qualification)."""
