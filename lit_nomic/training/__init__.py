"""Contrastive training: the LightningModule, its callbacks, FSDP2 sharding, export, and the CLI.

Nothing is imported here: ``import lit_nomic.training.module`` (or ``callbacks``, ``export``) pulls in
Lightning, which ``lit-nomic --help`` and the evaluation tools should not pay for.
"""
