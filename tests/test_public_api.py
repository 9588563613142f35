"""The public API names resolve and the README's Python snippet works."""

from __future__ import annotations

import lossatlas as la


def test_public_names_resolve() -> None:
    for name in la.__all__:
        assert getattr(la, name) is not None


def test_readme_snippet(tmp_path) -> None:
    data = la.load_data("xor:n=5")
    model = la.build_model("zoo:mlp:widths=4", input_shape=data.input_shape, output_dim=data.output_dim)
    ds = la.surface(model, data, x="-1:1:3", y="-1:1:3", out=tmp_path / "surface.zarr")
    assert ds.train_loss.dims == ("x", "y")
    dirs = la.load_directions(tmp_path / "surface.zarr")
    assert len(dirs) == 2 and set(dirs[0]) == {n for n, _ in model.named_parameters()}
