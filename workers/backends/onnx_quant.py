"""int8 variants of an ONNX embedding export, each measured against float32 before use.

Two recipes were measured on all-MiniLM-L6-v2 (2,000 docstring sentences,
`workers.backends.embed_quality`; `seekq bench` row E4 repeats it):

- `dynamic`: `quantize_dynamic`, per-channel int8 weights and per-tensor uint8
  activations quantised on the fly. ~2x the float32 graph's sentences/s on 2 cores, but
  mean cosine 0.993 and top-10 neighbour overlap 0.89: below the bar. Excluding the
  attention, the FFN input or the FFN output MatMuls, or the first layer, one group at a
  time, never passed 0.92; quantising only the FFN input MatMuls gave 0.932 at 1.15x
  the float32 graph. Not offered.
- `weight-only` (the recipe used): `MatMulNBitsQuantizer` with 8-bit symmetric weights in
  blocks of 32 and `accuracy_level=4` (int8 activations per block inside the kernel):
  mean cosine 0.9997, top-10 overlap 0.976, a quarter of the weight bytes, and about the
  float32 graph's speed on 2 cores (E4: 404 vs 368 sentences/s in a quiet run, 352 vs
  369 in a busy one): it saves memory more than time, so `auto` keeps float32.

Whatever the recipe, the quantised graph's quality is measured when it is built (on
`GATE_TEXTS` texts) and stored in its manifest; `onnx-int8` refuses a graph that fails the
bar.
"""

import logging
from pathlib import Path
from typing import Any

import onnx
from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

from workers.backends import EmbedderOptions
from workers.backends.embed_quality import compare, eval_texts
from workers.backends.onnx_export import GRAPH, Export, cache_key, cached_export

log = logging.getLogger(__name__)

RECIPE = "int8-wo8-b32-acc4"
GATE_TEXTS = 1000


def int8_export(path: Path, options: EmbedderOptions, fp32: Export) -> Export:
    from workers.backends.onnx import CPU, cache_dir, make_embedder

    def build(target: Path) -> dict[str, Any]:
        log.info("quantising %s to int8 (%s) and measuring it; once, cached", path.name, RECIPE)
        quantize_weight_only(fp32.graph, target / GRAPH)
        candidate = Export(target, {**fp32.manifest, "variant": RECIPE})
        texts = eval_texts(GATE_TEXTS)
        reference = make_embedder(path, fp32, options, [CPU]).embed(texts, True, _never)
        quantised = make_embedder(path, candidate, options, [CPU]).embed(texts, True, _never)
        quality = compare(reference.vectors, quantised.vectors)
        log.info("int8 %s of %s: %s", RECIPE, path.name, quality.describe())
        report = {**quality.as_dict(), "description": quality.describe()}
        return {**fp32.manifest, "variant": RECIPE, "quality": report}

    return cached_export(cache_dir(options), cache_key(path, RECIPE), build)


def quantize_weight_only(source: Path, target: Path) -> None:
    quantizer = MatMulNBitsQuantizer(
        onnx.load(str(source)), bits=8, block_size=32, is_symmetric=True, accuracy_level=4
    )
    quantizer.process()
    quantizer.model.save_model_to_file(str(target), use_external_data_format=False)


def _never() -> bool:
    return False
