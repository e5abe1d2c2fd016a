"""Named presets (configs/experiment/): `experiment=NAME` is the way to pick one (the group is in config.yaml's
defaults); `+experiment=NAME`, the form the docs used first, keeps working. A preset that declares a sweep
(hydra.sweeper.params) runs as that sweep with -m; without -m it is refused, not run as one unrelated job."""
from __future__ import annotations

from typing import Any

from hydra.types import RunMode

from gradexp.config.schema import ConfigError

GROUP = "experiment"


class UnsweptPreset(ConfigError):
    """A sweep preset started without -m: one line, exit 2, no folder left behind."""

    def __init__(self, message: str):
        ValueError.__init__(self, message)
        self.key, self.value, self.allowed = GROUP, None, message


def normalise(args: list[str]) -> list[str]:
    """'+experiment=he2015' -> 'experiment=he2015' (Hydra refuses to add a group the defaults already hold)."""
    return [a[1:] if a.startswith(f"+{GROUP}=") else a for a in args]


def refuse_unswept(hydra_cfg: Any, overrides: list[str], resuming: bool) -> None:
    """A single run (no -m) of a preset that declares a sweep: one line saying to add -m. Resuming one job of such a
    sweep (resume=, always without -m), or naming one value for every swept key, is that job and goes ahead."""
    if resuming or hydra_cfg.mode != RunMode.RUN:
        return
    params = dict(hydra_cfg.sweeper.get("params") or {})
    preset = next((o.split("=", 1)[1] for o in overrides if o.startswith(f"{GROUP}=")), None)
    if preset is None or not params:
        return
    given = {o.split("=", 1)[0].lstrip("+~") for o in overrides}
    if given >= set(params):  # every swept key has its one value: a single job of the preset (as advice prints it)
        return
    swept = " ".join(f"{k}={v}" for k, v in params.items())
    raise UnsweptPreset(f"{GROUP}={preset} is a sweep over {swept}: add -m to run it "
                        f"(gradexp run -m {' '.join(overrides)})")
