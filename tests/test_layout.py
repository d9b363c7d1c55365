"""The package's import direction (plans/0010-layout.md): the networks are plain PyTorch."""

import subprocess
import sys


def test_the_networks_import_no_lightning():
    code = (
        "import sys, tinycats.networks.dit, tinycats.networks.flow, tinycats.networks.augment\n"
        "found = sorted(m for m in sys.modules if m.split('.')[0] in ('lightning', "
        "'pytorch_lightning', 'lightning_fabric'))\n"
        "assert not found, found[:3]"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
