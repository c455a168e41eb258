"""The Python API: the objects the command line uses, for scripts, notebooks and CI jobs.

``build`` takes the same typed settings as ``resnet-deploy build`` and returns the published bundle and
its report; ``load_bundle`` opens a bundle (hash-checked, as ``infer`` does) and predicts on images or
arrays with the best runtime present. Nothing here imports torch until ``build`` runs, so
``load_bundle`` works on a device with the [device] extra only.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence, Union

if TYPE_CHECKING:  # imported when called: `import resnet_deploy` stays cheap, and torch-free on a device
    import numpy as np

    from resnet_deploy.pipeline.build import BuildResult
    from resnet_deploy.pipeline.device import LoadedBundle
    from resnet_deploy.pipeline.records import Report
    from resnet_deploy.pipeline.settings import BuildSettings
    from resnet_deploy.targets import Artifact, Runner

ImageLike = Union[str, Path, "np.ndarray"]


def build(settings: BuildSettings | None = None, /, *, quiet: bool = True, **fields: Any) -> BuildResult:
    """Build a bundle, as ``resnet-deploy build`` does.

    Give a ``BuildSettings`` or its fields as keywords (``targets=("openvino",), out=Path("build/x")``);
    keywords replace the fields of a given ``settings``. Raises ``GateFailed`` (the bundle is written, its
    report marked failed) or another ``ResnetDeployError`` with the message the command line prints.
    """
    from resnet_deploy.console import Ui
    from resnet_deploy.pipeline.build import build as run
    from resnet_deploy.pipeline.settings import BuildSettings

    if settings is None:
        settings = BuildSettings(**fields)
    elif fields:
        settings = dataclasses.replace(settings, **fields)
    return run(settings, ui=Ui(quiet=quiet))


@dataclass(frozen=True)
class Bundle:
    """An opened bundle: its report, its artifacts, and predictions from one of them."""

    loaded: LoadedBundle

    @property
    def path(self) -> Path:
        return self.loaded.path

    @property
    def report(self) -> Report:
        return self.loaded.report

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.loaded.prep.class_names

    @property
    def artifacts(self) -> tuple[Artifact, ...]:
        return self.loaded.artifacts

    def runner(self, *, runtime: str | None = None, precision: str | None = None,
               threads: int | None = None) -> Runner:
        """A runner for the best artifact present here (or the one asked for), as ``infer`` picks it."""
        from resnet_deploy.pipeline.device import choose_artifact, load_runner

        return load_runner(self.loaded, choose_artifact(self.loaded, runtime=runtime, precision=precision),
                           threads=threads)

    def preprocess(self, images: Sequence[ImageLike]) -> np.ndarray:
        """Image files, or decoded HxW / HxWxC uint8 arrays, as the model's normalised NCHW float32 input."""
        import numpy as np

        from resnet_deploy.pipeline.device import read_image

        prep = self.loaded.prep
        rows = [read_image(Path(im), prep) if isinstance(im, (str, Path)) else prep(im) for im in images]
        return np.ascontiguousarray(np.stack(rows), dtype=np.float32)

    def predict(self, images: Sequence[ImageLike], *, runtime: str | None = None,
                precision: str | None = None) -> np.ndarray:
        """Logits, one row per image."""
        import numpy as np

        return np.asarray(self.runner(runtime=runtime, precision=precision).run(self.preprocess(images)))


def load_bundle(path: str | Path, *, check_hashes: bool = True) -> Bundle:
    """Open a bundle written by ``build``; a damaged or unlisted file is a ``BundleError``."""
    from resnet_deploy.pipeline.device import open_bundle

    return Bundle(open_bundle(Path(path), check_hashes=check_hashes))
