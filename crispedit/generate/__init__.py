"""SDXL pair generation: source images, Prompt-to-Prompt targets, inpainting, refinement, style edits.

One module per concern, each readable alone:

* :mod:`~crispedit.generate.options` - sampler settings and the speed/memory options a recipe sets;
* :mod:`~crispedit.generate.sdxl_models` - loading SDXL pipelines by id and revision, and their tiny twins;
* :mod:`~crispedit.generate.alignment` - token alignment of a source and a target prompt (both tokenizers);
* :mod:`~crispedit.generate.p2p` - the Prompt-to-Prompt attention processor and its controller;
* :mod:`~crispedit.generate.blending` - masks at latent and layer resolution, latent blending;
* :mod:`~crispedit.generate.text2image` - source images (with keyword masks) and P2P pairs;
* :mod:`~crispedit.generate.inpaint`, :mod:`~crispedit.generate.refine`, :mod:`~crispedit.generate.style` -
  the image-conditioned branches.

The stages in ``crispedit/stages/generate_*.py`` turn samples into calls of these functions.
Nothing here imports torch or diffusers at module import time except the modules that run
models, and the stages import those in ``setup()``, so ``crispedit validate`` stays light.
"""
