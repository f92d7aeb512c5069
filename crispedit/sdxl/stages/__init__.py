"""The SDXL generators as recipe stages: ``sdxl_source``, ``p2p``, ``inpaint``, ``refine``, ``style``.

Each imports torch and diffusers only in ``setup()`` and the calls, so ``crispedit validate`` stays light."""
