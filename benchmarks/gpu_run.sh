#!/usr/bin/env bash
# The one command for a lent GPU machine (issue 9, part 3): from the repository root,
# with the wheels in .whl/ carried along,
#
#     bash benchmarks/gpu_run.sh
#
# 1. installs .whl/*.whl into /tmp/site with pip (no index, no deps): the pinned stack
#    (transformers 4.53.2, tokenizers 0.21.4, huggingface-hub 0.36.2, peft, bitsandbytes
#    with its CUDA 13.0 library only, spaCy 3.8 + spacy-transformers 1.4 + thinc and
#    their dependencies) that the machine lacks or has in other versions;
# 2. puts /tmp/site first on PYTHONPATH (our pins win over the machine's transformers
#    5.x), then the repository itself, and writes a dist-info for spacy-unmasked into
#    /tmp/site so that spaCy finds its registered names through entry points (the code
#    runs from the working tree, so nothing needs rebuilding after a change);
# 3. prints versions, the entry-point check and nvidia-smi;
# 4. runs benchmarks/gpu_check.py for the tiny shape, then GPU_SHAPE (default 7b; if
#    7b yields no training figures and time is left, 1b), each under a timeout, so
#    the whole run ends within GPU_RUN_LIMIT seconds (default 330).
# Results: $OUT/gpu_check_<shape>.json and $OUT/gpu_run.log (OUT defaults to ./gpu-out).
# For a rehearsal on a CPU machine: PYTHON=<python with torch> GPU_WHEELS=<wheels for it>
# GPU_SITE=<folder> GPU_CHECK_ARGS=--allow-cpu GPU_SHAPE=none bash benchmarks/gpu_run.sh
#
# Here, on the development machine, first (re)build the wheels (27, about 43 MiB):
#
#     bash benchmarks/gpu_run.sh --build-wheels
#
# It downloads cp312 manylinux x86_64 wheels of the pins below (pip download
# --only-binary=:all: --python-version 3.12 --no-deps), strips debug info from their
# shared libraries (spaCy's wheel shrinks from 34 to 7 MiB), keeps only bitsandbytes'
# CUDA 13.0 and CPU libraries (torch there is cu130 and bitsandbytes loads
# libbitsandbytes_cuda<torch.version.cuda>.so), rewrites each RECORD, and checks that
# every Requires-Dist is met by the set or by a package the machine already has.
set -u

WHEELS="transformers==4.53.2 tokenizers==0.21.4 huggingface-hub==0.36.2 peft==0.21.2 bitsandbytes==0.50.2
spacy==3.8.18 spacy-transformers==1.4.0 thinc==8.3.14 spacy-legacy==3.0.12 spacy-loggers==1.0.5 murmurhash==1.0.16
cymem==2.0.16 preshed==3.0.15 wasabi==1.1.3 srsly==2.5.6 catalogue==2.0.10 weasel==1.0.1 confection==1.3.4
pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0
spacy-alignments==0.9.3 blis==1.3.4 cloudpathlib==0.26.0 smart-open==9.0.2"
# Already on the machine (device KINDS.md): torch 2.11 cu130, numpy 2.5, accelerate 1.15, safetensors 0.8, ...
MACHINE="accelerate click filelock fsspec hf-xet httpx jinja2 numpy packaging psutil pyyaml regex requests safetensors
setuptools torch tqdm typer wrapt"

if [ "${1:-}" = "--build-wheels" ]; then
    PY=${PYTHON:-.venv/bin/python}
    tmp=$(mktemp -d)
    platforms=""
    for tag in manylinux_2_35 manylinux_2_34 manylinux_2_31 manylinux_2_28 manylinux_2_27 manylinux_2_24 \
        manylinux_2_17 manylinux2014 manylinux_2_5 manylinux1; do platforms="$platforms --platform ${tag}_x86_64"; done
    # shellcheck disable=SC2086
    $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $platforms \
        -d "$tmp" $WHEELS || exit 1
    mkdir -p .whl && rm -f .whl/*.whl && mv "$tmp"/*.whl .whl/ && rmdir "$tmp"
    $PY - "$MACHINE" .whl/*.whl <<'EOF' || exit 1
import base64, hashlib, os, pathlib, subprocess, sys, tempfile, zipfile
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

machine = {canonicalize_name(n) for n in sys.argv[1].split()}
wheels = [pathlib.Path(p) for p in sys.argv[2:]]
keep_bnb = {"libbitsandbytes_cuda130.so", "libbitsandbytes_cpu.so"}
env = {"python_version": "3.12", "python_full_version": "3.12.3", "platform_machine": "x86_64",
       "sys_platform": "linux", "platform_system": "Linux", "implementation_name": "cpython",
       "platform_python_implementation": "CPython", "os_name": "posix", "extra": ""}
have, requires = {}, []
for wheel in wheels:
    before = wheel.stat().st_size
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        with zipfile.ZipFile(wheel) as z:
            z.extractall(root)
            names = [i.filename for i in z.infolist() if not i.is_dir()]
            modes = {i.filename: i.external_attr >> 16 for i in z.infolist()}
        for name in list(names):
            path = root / name
            if path.name.startswith("libbitsandbytes_") and path.name not in keep_bnb:
                path.unlink()
                names.remove(name)
            elif ".so" in path.name and path.read_bytes()[:4] == b"\x7fELF":
                subprocess.run(["strip", "--strip-debug", str(path)], check=True)
        record = next(n for n in names if n.endswith(".dist-info/RECORD"))
        meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
        lines = []
        for name in names:
            if name != record:
                data = (root / name).read_bytes()
                digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
                lines.append(f"{name},sha256={digest},{len(data)}")
        (root / record).write_text("\n".join([*lines, f"{record},,"]) + "\n")
        for line in (root / meta).read_text().splitlines():
            if line.startswith("Name:"):
                dist = canonicalize_name(line.split(":", 1)[1].strip())
            elif line.startswith("Version:"):
                have[dist] = line.split(":", 1)[1].strip()
            elif line.startswith("Requires-Dist:"):
                requires.append((dist, Requirement(line.split(":", 1)[1].strip())))
        packed = wheel.with_suffix(".part")
        with zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
            for name in [n for n in names if n != record] + [record]:
                info = zipfile.ZipInfo.from_file(root / name, name)
                info.external_attr = (modes.get(name) or 0o644) << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                z.writestr(info, (root / name).read_bytes(), compresslevel=9)
        os.replace(packed, wheel)
    print(f"{wheel.stat().st_size / 2**20:6.2f} MiB  {wheel.name} (was {before / 2**20:.2f})")
missing = []
for dist, req in requires:
    if req.marker is not None and not req.marker.evaluate(env):
        continue
    name = canonicalize_name(req.name)
    if name in have:
        if have[name] not in req.specifier:
            missing.append(f"{dist} needs {req}, the set has {have[name]}")
    elif name not in machine:
        missing.append(f"{dist} needs {req}: neither in the set nor on the machine")
total = sum(w.stat().st_size for w in wheels)
print(f"{len(wheels)} wheels, {total / 2**20:.1f} MiB")
if missing:
    sys.exit("unmet requirements:\n  " + "\n  ".join(missing))
print("every Requires-Dist is met by the set or by the machine")
EOF
    exit 0
fi

START=$(date +%s)
LIMIT=${GPU_RUN_LIMIT:-330}
BIG=${GPU_SHAPE:-7b}
OUT=${OUT:-$PWD/gpu-out}
SITE=${GPU_SITE:-/tmp/site}
PY=${PYTHON:-python3}
WHEEL_DIR=${GPU_WHEELS:-.whl}
CHECK_ARGS=${GPU_CHECK_ARGS:-}
mkdir -p "$OUT"

left() { echo $((LIMIT - ($(date +%s) - START))); }
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 TOKENIZERS_PARALLELISM=false
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1

main() {
echo "== install $(ls "$WHEEL_DIR"/*.whl | wc -l) wheels from $WHEEL_DIR into $SITE"
$PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEEL_DIR"/*.whl ||
    { echo "FAILED: wheel install"; return 2; }

# spacy-unmasked itself runs from the working tree; its entry points come from a dist-info.
$PY - "$SITE" <<'EOF' || { echo "FAILED: dist-info"; return 2; }
import pathlib, re, sys, tomllib

site = pathlib.Path(sys.argv[1])
project = tomllib.loads(pathlib.Path("pyproject.toml").read_text())["project"]
version = re.search(r'__version__\s*=\s*"([^"]+)"', pathlib.Path("spacy_unmasked/about.py").read_text())[1]
dist = site / f"spacy_unmasked-{version}.dist-info"
dist.mkdir(exist_ok=True)
(dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {version}\n")
lines = []
for group, entries in project.get("entry-points", {}).items():
    lines += [f"[{group}]", *(f"{name} = {target}" for name, target in entries.items()), ""]
(dist / "entry_points.txt").write_text("\n".join(lines))
(dist / "INSTALLER").write_text("gpu_run.sh\n")
(dist / "RECORD").write_text("")
print(f"wrote {dist} ({', '.join(project.get('entry-points', {}))})")
EOF
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
echo "== install done after $(($(date +%s) - START)) s"

echo "== versions and entry points"
$PY - <<'EOF'
import importlib.metadata as md
import sys

print("python", sys.version.split()[0], sys.executable)
names = ["torch", "transformers", "tokenizers", "huggingface-hub", "peft", "bitsandbytes", "accelerate", "safetensors",
         "spacy", "spacy-transformers", "thinc", "numpy", "cupy-cuda13x", "pydantic", "typer", "click", "flash-attn",
         "spacy-unmasked"]
for name in names:
    try:
        print(f"  {name}=={md.version(name)}")
    except md.PackageNotFoundError:
        print(f"  {name}: not installed")
import spacy  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from spacy.util import registry  # noqa: E402

print("transformers", transformers.__version__, "from", transformers.__file__)
arch = registry.architectures.get("spacy-unmasked.UnmaskedTransformer.v1")  # through entry points only
print("entry points:", arch.__module__, "| factory unmasked_transformer:",
      spacy.blank("en").has_factory("unmasked_transformer"))
import thinc.compat  # noqa: E402

print("torch cuda", torch.version.cuda, "available", torch.cuda.is_available(), "| cupy for thinc:",
      thinc.compat.has_cupy_gpu)
EOF
nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv || true
df -h /dev/shm /tmp 2>/dev/null | cat
free -g | head -2

run_check() {  # shape, seconds
    local shape=$1 secs=$2
    if [ "$secs" -lt 30 ]; then echo "== skip gpu_check --shape $shape: only $secs s left"; return; fi
    echo "== gpu_check --shape $shape (limit $secs s, $(left) s left in the run)"
    # shellcheck disable=SC2086
    timeout -k 10 "$secs" $PY benchmarks/gpu_check.py --shape "$shape" --out "$OUT" \
        --deadline $(($(date +%s) + secs - 20)) $CHECK_ARGS
    echo "== gpu_check --shape $shape exit $? after $(($(date +%s) - START)) s"
    rm -rf /dev/shm/spacy-unmasked-gpu-check-* /tmp/spacy-unmasked-gpu-check-*
}

tiny_secs=$(left)
[ "$tiny_secs" -gt 100 ] && tiny_secs=100
run_check tiny "$tiny_secs"
[ "$BIG" = none ] || run_check "$BIG" $(($(left) - 5))
if [ "$BIG" = 7b ] && ! $PY -c "
import json, sys
row = json.load(open('$OUT/gpu_check_7b.json')).get('train_checkpointing_off') or {}
sys.exit(0 if 'seconds_per_update' in row else 1)" 2>/dev/null; then
    echo "== 7b gave no training figures: falling back to 1b"
    run_check 1b $(($(left) - 5))
fi
echo "== done after $(($(date +%s) - START)) s"
ls -la "$OUT"
}

set -o pipefail
main 2>&1 | tee -a "$OUT/gpu_run.log"
