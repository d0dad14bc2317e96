"""experiments/step_ops.py: counting the products and convolutions of the lowered step."""

from __future__ import annotations

from tests.conftest import load_experiment


def test_im2col_steps_program_does_not_grow_with_the_batch():
    step_ops = load_experiment("step_ops")
    im2col = step_ops.main(["--resolution", "32", "--ch", "4", "--lowering", "im2col",
                            "--batches", "1,2"])  # fmt: skip
    # The image axis is a batch dimension of each product: the same program at any batch.
    assert im2col[1] == im2col[2]
    assert im2col[1]["dot_general"]["count"] > im2col[1]["dot_general"]["distinct"] > 0
    assert im2col[1]["convolution"]["count"] > 0  # D's convolutions stay convolutions
    unrolled = step_ops.main(["--resolution", "32", "--ch", "4", "--lowering", "unrolled",
                              "--batches", "2"])  # fmt: skip
    # One convolution per image of each per-image layer: more at batch 2 than im2col has.
    assert unrolled[2]["convolution"]["count"] > im2col[2]["convolution"]["count"]
    assert unrolled[2]["convolution"]["distinct"] >= im2col[2]["convolution"]["distinct"]


def test_count_ops_reads_stablehlo_lines():
    step_ops = load_experiment("step_ops")
    dot = ("stablehlo.dot_general %a, %b, contracting_dims = [1] x [0] "
           ": (tensor<2x3xf32>, tensor<3x4xf32>) -> tensor<2x4xf32>")  # fmt: skip
    conv = ("stablehlo.convolution(%x, %k) dim_numbers = [b, 0, 1, f]x[0, 1, i, o]->[b, 0, 1, f] "
            ": (tensor<1x8x8x3xf32>, tensor<3x3x3x4xf32>) -> tensor<1x8x8x4xf32>")  # fmt: skip
    text = f"%0 = {dot}\n%1 = {dot}\n%2 = {conv}\n%3 = stablehlo.add %0, %1 : tensor<2x4xf32>"
    assert step_ops.count_ops(text) == {
        "dot_general": {"count": 2, "distinct": 1},
        "convolution": {"count": 1, "distinct": 1},
    }
