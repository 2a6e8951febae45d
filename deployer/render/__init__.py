"""Rendering: values layering, Jinja2 templates, manifest parsing, apply order and schema validation.

Pure: dicts and text in, dicts out. Helm itself runs in the `deployer.helm` adapter.
"""
