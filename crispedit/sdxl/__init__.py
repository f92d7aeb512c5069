"""SDXL pair generation: source images, Prompt-to-Prompt targets, inpainting, refinement, style edits.

One module per concern, each readable alone:

* :mod:`~crispedit.sdxl.options` - sampler settings and the speed/memory options a recipe sets;
* :mod:`~crispedit.sdxl.models` - loading SDXL pipelines by id and revision, and their tiny twins;
* :mod:`~crispedit.sdxl.alignment` - token alignment of a source and a target prompt (both tokenizers);
* :mod:`~crispedit.sdxl.p2p` - the Prompt-to-Prompt attention processor and its controller;
* :mod:`~crispedit.sdxl.blending` - masks at latent and layer resolution, latent blending;
* :mod:`~crispedit.sdxl.text2image` - source images (with keyword masks) and P2P pairs;
* :mod:`~crispedit.sdxl.inpaint`, :mod:`~crispedit.sdxl.refine`, :mod:`~crispedit.sdxl.style` -
  the image-conditioned branches.

The stages in ``crispedit/sdxl/stages/`` turn samples into calls of these functions.
Nothing here imports torch or diffusers at module import time except the modules that run
models, and the stages import those in ``setup()``, so ``crispedit validate`` stays light.
"""
