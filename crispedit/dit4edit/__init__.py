"""DiT4Edit on diffusers' PixArt classes: DPM-Solver++ inversion, unified attention control, patch merging.

DiT4Edit (arXiv 2411.03286) released no code; this package is our implementation from the
paper's description. Modules, one idea each:

* :mod:`.models`: loading PixArt and T5 by id/revision/dtype, and their tiny twins;
* :mod:`.solver`: DPM-Solver++(2M) sampling and its inversion with fixed-point correction;
* :mod:`.attention`: attention processors for the unified attention control (and P2P mappers);
* :mod:`.merging`: token merging by bipartite soft matching around PixArt's self-attention;
* :mod:`.pipeline`: the denoising loop tying them together, one (source, target) pair at a time.

Importing this package imports no torch; the modules that need it import it themselves.
"""
