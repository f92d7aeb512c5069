"""Video-frame pair mining: readers, scene cuts, motion and camera measures, pair selection, a killable worker.

The stages that use it are ``videos`` (crispedit/video/stages/videos.py), ``video_pairs`` and
``video_caption``; docs/video.md describes the whole branch.
"""
