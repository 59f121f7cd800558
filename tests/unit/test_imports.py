"""``husai.saes`` and ``husai.metrics`` must import with torch, numpy, scipy, pydantic and
safetensors alone (the GPU machine has no TransformerLens, SAELens, W&B or Ray)."""

import subprocess
import sys

HEAVY = ("transformer_lens", "sae_lens", "wandb", "ray", "pandas", "matplotlib")


def test_core_packages_import_without_the_heavy_stack() -> None:
    code = (
        "import sys\n"
        f"for name in {HEAVY!r}:\n"
        "    sys.modules[name] = None  # any import of these now fails\n"
        "import husai, husai.saes, husai.metrics, husai.config, husai.tasks, husai.model.fourier\n"
        "from husai.saes import train_group, load_sae, save_sae, evaluate\n"
        "from husai.metrics import pw_mcc, stability_pair\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
