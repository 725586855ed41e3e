"""Applications built on the library — the demo, the replay, the NAB runner — which the library
never imports (tests/apps/test_layers.py holds that boundary)."""
