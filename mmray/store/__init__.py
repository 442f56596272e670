"""Feature store: versioned feature groups keyed by (patient_id, event_time).

``FeatureStore`` (local folder or ``s3://``), the point-in-time join
(:func:`training_table`) and a Ray Data sink (:class:`FeatureGroupSink`,
imported lazily so that using the store does not import Ray).
"""

from mmray.store.join import point_in_time_join, training_dataset, training_table
from mmray.store.store import FeatureStore
from mmray.store.writer import VersionWriter

__all__ = ["FeatureStore", "FeatureGroupSink", "VersionWriter", "point_in_time_join",
           "training_table", "training_dataset"]


def __getattr__(name):
    if name == "FeatureGroupSink":
        from mmray.store.sink import FeatureGroupSink

        return FeatureGroupSink
    raise AttributeError(f"module 'mmray.store' has no attribute {name!r}")
