"""The library's compiled CPU kernels (built on first use, with reference fallbacks): fused
self-attention over field tokens (`attention.field_attention`)."""
