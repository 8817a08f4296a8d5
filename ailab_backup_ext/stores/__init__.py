"""Where backups are kept: one interface (:mod:`.base`), one module per kind.

FolderStore and VolumeStore still live in :mod:`ailab_backup_ext.store` (moving them here is a
pure move left for after the worker branch, which changes VolumeStore, is merged); they are
re-exported so that code asks this package for every kind.
"""

from ..store import FolderStore, VolumeStore, check_id, make_id, meta_is_sound
from .base import HERE, OFF, ArchiveWriter, Store, local_path, location_of, open_writer
from .mirror import MirroredStore
from .s3 import S3Store, is_s3_url

__all__ = [
    "ArchiveWriter", "FolderStore", "HERE", "MirroredStore", "OFF", "S3Store", "Store", "VolumeStore",
    "check_id", "is_s3_url", "local_path", "location_of", "make_id", "meta_is_sound", "open_writer",
]
