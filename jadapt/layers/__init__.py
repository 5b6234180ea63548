"""The bottom floor: numerics that encoders, adapters and fusion share.

``precision`` (the compute-dtype policies and their one check), ``matmul`` and ``einsum``
(products under a policy, with the custom VJPs that keep bf16 products on fast kernels),
``dense`` (``Dense`` and the ``compute_dtype`` field every matmul module declares), ``norm``,
``dropout`` (counter-hash masks), ``activations`` and ``attention`` (matmul and fused forms).

Nothing here imports another jadapt package, so ``models``, ``adapters`` and ``fusion`` can all
build on it (``tests/test_layering.py``). The package itself imports nothing: ``precision`` is
read by the CLI before jax may be imported.
"""
