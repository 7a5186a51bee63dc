"""Qualification of the PKCS#11 modules Barbican's p11_crypto plugin runs on.

One job per module; data flows down this list:
- options          Barbican's [p11_crypto_plugin] option model and the ini/YAML files holding it
- module           calling a PKCS#11 module as Barbican's cffi binding does; CKR_* names
- fixes            known failures -> the option to change and the fix
- checks           the backend checks (python-pkcs11, a process apart from Barbican)
- workers          child processes a crashing module cannot take down
- tokens           token provisioning (a throwaway SoftHSM token)
- barbican_checks  Barbican end to end through the fault shim (secret API, transient HSM errors)
- measure          throughput and latency, PKCS#11 calls per API operation
- report           qualification.json and qualification.md
- command          `barbican-harness qualify-hsm`: the stages in order
The pytest suite in conformance/backend is a thin layer over `checks`.
"""
