"""The synchronized-BN case list, shared by tests/library/_sync_bn_worker.py and tests/library/test_sync_bn.py.

Kept free of JAX: the test process must not import JAX with the worker's 4 forced devices (the worker is a separate
process for exactly that reason), yet it needs the names to parametrize its tests.
"""

MODES = ("shard_map", "pmap", "vmap", "jit_sharded")
# name: (shape, channel axis). Per-device batch is shape[0] / 4.
LAYOUTS = {
    "nchw": ((8, 3, 4, 5), 1),
    "nhwc": ((8, 4, 5, 3), -1),
    "nc": ((16, 5), 1),
    "ncl": ((8, 4, 6), 1),
}


def case_names() -> list[str]:
    """Every case the worker runs, in order."""
    names = []
    for mode in MODES:
        for lname in LAYOUTS:
            # momentum=None (cumulative average, 1/num_batches_tracked) on one layout: the update
            # rule does not depend on the layout, and each case costs compilations.
            for mom in (0.1, None) if lname == "nchw" else (0.1,):
                names.append(f"bn_train/{mode}/{lname}/momentum={mom}")
        for lname in ("nchw", "nhwc"):
            names.append(f"bn_grad/{mode}/{lname}")
    names += [
        "bn_grad_inside/pmap/nchw",
        "bn_grad_inside/vmap/nchw",
        "bn_train/shard_map_unchecked/nchw/momentum=0.1",
        "bn_grad/shard_map_unchecked/nchw",
        "bn_train/pmap/per_device_batch_1",
        "control/shard_map_no_axis_name",
    ]
    names += [f"instance_train/{m}" for m in MODES]
    names += ["group/shard_map_no_axis_name", "group/jit_sharded", "collectives"]
    return names
