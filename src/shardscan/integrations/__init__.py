"""One-line ways for training code to write a manifest into every checkpoint it saves, once
the save is complete and on the main process only (shardscan.manifest):

    Trainer(..., callbacks=[shardscan.integrations.transformers.ManifestCallback()])
    lightning.Trainer(..., plugins=[shardscan.integrations.lightning.ManifestCheckpointIO()])
    accelerator.save_state(d); shardscan.write_manifest(d)      # accelerate, dcp.save, own loops

Each module imports its framework only when used, so importing this package costs nothing.
"""
