"""Backend qualification of a PKCS#11 module for Barbican's p11_crypto plugin.

Options (see README.md):
  --p11-module PATH      PKCS#11 library (default: library_path from --p11-options, else SoftHSM)
  --p11-token-label L    token to use (default: token_labels/token_serial_number from
                         --p11-options; with SoftHSM and neither, a throwaway token)
  --p11-pin-env VAR      name of the environment variable holding the user PIN
  --p11-options FILE     [p11_crypto_plugin] options (barbican.conf, ini or YAML);
                         whatever is not given takes Barbican's own default

The suite runs when it is named on the command line (`pytest conformance/backend`) or
when a --p11-* option is given; in a bare `pytest` of the whole repository it is skipped.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from harness.qualify.checks import Qualifier, Target
from harness.qualify.module import default_module, is_softhsm
from harness.qualify.options import P11Options, load_options, required_mechanisms
from harness.qualify.provision.softhsm import SoftHSMProvisioner

HERE = Path(__file__).resolve().parent
_OPTS = ("p11_module", "p11_token_label", "p11_pin_env", "p11_options")
_OPTIONS_KEY = pytest.StashKey[P11Options]()


def pytest_addoption(parser):
    group = parser.getgroup("p11-qualification", "Barbican p11_crypto backend qualification")
    group.addoption("--p11-module", default=None, metavar="PATH",
                    help="PKCS#11 library to qualify (default: library_path of --p11-options, else SoftHSM)")
    group.addoption("--p11-token-label", default=None, metavar="LABEL",
                    help="token label (default: from --p11-options; SoftHSM without one: a throwaway token)")
    group.addoption("--p11-pin-env", default=None, metavar="VAR",
                    help="name of the environment variable holding the user PIN (the PIN is never printed)")
    group.addoption("--p11-options", default=None, metavar="FILE",
                    help="[p11_crypto_plugin] options (barbican.conf, ini or YAML); the rest: Barbican's defaults")


def _given(config) -> bool:
    return any(config.getoption(o, default=None) for o in _OPTS)


def _targeted(config) -> bool:
    """The suite was named on the command line, or a --p11-* option was given."""
    if _given(config):
        return True
    base = Path(config.invocation_params.dir)
    for arg in config.args:
        p = (base / arg.split("::", 1)[0]).resolve()
        if p == HERE or HERE in p.parents:
            return True
    return False


def p11_options(config) -> P11Options:
    if _OPTIONS_KEY not in config.stash:
        path = config.getoption("p11_options", default=None)
        try:
            config.stash[_OPTIONS_KEY] = load_options(path)
        except ValueError as exc:
            raise pytest.UsageError(f"--p11-options: {exc}") from None
    return config.stash[_OPTIONS_KEY]


def pytest_collection_modifyitems(config, items):
    if _targeted(config):
        return
    skip = pytest.mark.skip(reason="backend qualification: run `pytest conformance/backend` or pass --p11-module")
    for item in items:
        if HERE in Path(item.path).resolve().parents:
            item.add_marker(skip)


def pytest_generate_tests(metafunc):
    if "mechanism_requirement" in metafunc.fixturenames:
        reqs = required_mechanisms(p11_options(metafunc.config))
        metafunc.parametrize("mechanism_requirement", reqs, ids=[r.id for r in reqs])


@pytest.fixture(scope="session")
def p11_opts(pytestconfig) -> P11Options:
    return p11_options(pytestconfig)


def _resolve(config, opts: P11Options) -> tuple[str, str | None]:
    """The module to load and the user PIN (None: a throwaway SoftHSM token makes its own)."""
    opt = config.getoption
    module = opt("p11_module", default=None) or opts.library_path or default_module()
    if not module:
        raise pytest.UsageError("--p11-module: no module given and SoftHSM (libsofthsm2.so) is not installed")
    if not Path(module).is_file():
        raise pytest.UsageError(f"--p11-module: {module} does not exist")
    pin = None
    var = opt("p11_pin_env", default=None)
    if var:
        if var not in os.environ:
            raise pytest.UsageError(f"--p11-pin-env: the environment variable {var} is not set")
        pin = os.environ[var]
    elif opts.login:
        pin = opts.login
    if not (opt("p11_token_label", default=None) or opts.token_labels or opts.token_serial_number):
        if not is_softhsm(module):
            raise pytest.UsageError("--p11-token-label: needed for a module other than SoftHSM "
                                    "(or token_labels / token_serial_number in --p11-options)")
    elif pin is None:
        raise pytest.UsageError("--p11-pin-env: name the environment variable holding the token's user PIN")
    return module, pin


def pytest_configure(config):
    """Fail fast, before collection, on a bad options file, module or PIN variable."""
    if _targeted(config):
        _resolve(config, p11_options(config))


@pytest.fixture(scope="session")
def p11_target(pytestconfig, p11_opts, tmp_path_factory):
    """Module, token and PIN to qualify. With SoftHSM and no token given, a throwaway token
    (own SOFTHSM2_CONF, set here before any module is loaded; random PIN in memory only)."""
    module, pin = _resolve(pytestconfig, p11_opts)
    label = pytestconfig.getoption("p11_token_label")
    if label or p11_opts.token_labels or p11_opts.token_serial_number:
        yield Target(module, token_label=label, token_serial=None if label else p11_opts.token_serial_number,
                     pin=pin)
        return
    with SoftHSMProvisioner(tmp_path_factory.mktemp("softhsm") / "token").provision() as token:
        yield Target(token.module, token_label=token.label, pin=token.pin)


@pytest.fixture(scope="session")
def qualifier(p11_target, p11_opts):
    """One Qualifier (one logged-in session, like Barbican's caching session) for the run;
    everything it created on the token is destroyed at the end."""
    q = Qualifier(p11_target, p11_opts)
    yield q
    problems = q.close()
    if problems:
        pytest.fail(f"cleanup of the qualification's objects on the token: {'; '.join(problems)}", pytrace=False)
