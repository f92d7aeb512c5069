"""After a build, no models: what a build says about itself, refilter, cross-shard dedupe, score histograms."""
