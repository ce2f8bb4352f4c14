"""Re-serialize a gpu repository's ``preprocess/1/model.dali`` with the DALI installed here (torch-free).

    python3 -m build_engines.dali_model --repository /models

Run inside the serving container (``docker/Dockerfile.gpu`` does, at start), so the container's own DALI
writes the graph its dali backend loads: a ``model.dali`` from another DALI version may name operators the
backend's DALI does not know (``decoders__Video`` needs DALI >= 2.0). The spec, batch size and DALI placement
come from the repository itself (``frame_indices/preprocess.json``, ``serving.json``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from training.preprocessing.dali import gpu_to_cpu_edges, serialize_pipeline
from triton_models import contract
from triton_models.runtime import read_spec_file


def reserialize(repository: str | Path) -> tuple[Path, str]:
    """Write ``preprocess/1/model.dali`` again; returns its path and the DALI version that wrote it."""
    import nvidia.dali

    from training.preprocessing.dali import build_pipeline

    repo = Path(repository)
    spec, _ = read_spec_file(repo / contract.FRAME_SAMPLER)
    serving = json.loads((repo / contract.SERVING_FILE).read_text())
    options = serving["options"]
    batch = int(options.get("dali_max_batch_size") or options["max_batch_size"])
    device = str(options.get("dali_device", "mixed"))  # the placement the repository was built for
    edges = gpu_to_cpu_edges(build_pipeline(spec, device=device, batch_size=batch))
    if edges:
        raise RuntimeError(f"the DALI graph reads GPU data on the CPU ({edges}); the dali backend refuses it")
    path = serialize_pipeline(
        spec, repo / contract.PREPROCESS / "1" / contract.DALI_FILE, device=device, max_batch_size=batch
    )
    version = str(nvidia.dali.__version__)
    serving.setdefault("built_with", {})["dali"] = version
    (repo / contract.SERVING_FILE).write_text(json.dumps(serving, indent=2) + "\n")
    return path, version


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m build_engines.dali_model", description=__doc__.split("\n")[0])
    p.add_argument("--repository", required=True, help="a generated gpu repository")
    args = p.parse_args(argv)
    try:
        path, version = reserialize(args.repository)
    except (OSError, KeyError, ValueError, RuntimeError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path} with DALI {version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
