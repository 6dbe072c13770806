"""Bulk scoring with Ray Data: the ``giellm score`` job (driver, per-actor UDF, progress, config).

The generation itself (engines, constraint, extractor) lives in ``giellm_ray.generation``; this
package reads Parquet, streams it through an actor pool that holds the model, writes and commits
the scored Parquet and reports.
"""
