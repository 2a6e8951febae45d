"""One push → one release, as a sequence of steps (docs/architecture.md §1): orchestration over the pure layers
and the adapters. `steps` holds build (3), render and validate (4, 5); `release` the canary (7 to 10)."""

from deployer.pipeline.steps import BuildSettings, ImageRef, Rendered, build_image, injected_values, render_environment

__all__ = ["BuildSettings", "ImageRef", "Rendered", "build_image", "injected_values", "render_environment"]
