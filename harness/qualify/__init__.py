"""Qualification of the PKCS#11 modules Barbican's p11_crypto plugin runs on.

One job per module; data flows down this list:
- options          Barbican's [p11_crypto_plugin] option model and the ini/YAML files holding it
- module           calling a PKCS#11 module as Barbican's cffi binding does; CKR_* names
- fixes            known failures -> the option to change and the fix
- checks           the backend checks (python-pkcs11, a process apart from Barbican)
- workers          child processes a crashing module cannot take down
- provision/       one provisioner per module: token, PINs, label, daemons, tear-down
- search           which [p11_crypto_plugin] block works: combinations tried, pruned, passed
- barbican_checks  Barbican end to end through the fault shim (secret API, transient HSM errors)
- measure          throughput and latency, PKCS#11 calls per API operation
- report           qualification.json and qualification.md of one module
- command          `barbican-harness qualify-hsm`: the stages in order, for one token
- matrix           `qualify-hsm matrix`: every module, each in its own process
- matrix_report    matrix.json, matrix.md, matrix.html (checked in headless Chromium)
- barbican_bugs    the p11 plugin bugs found, reproduced with Barbican's own code
The pytest suite in conformance/backend is a thin layer over `checks`.
"""
