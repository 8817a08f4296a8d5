"""Where backups are kept: one interface (:mod:`.base`), one module per kind.

A kind per module: :mod:`.folder` (a folder of this machine), :mod:`.volume` (a Docker volume),
:mod:`.s3` (an S3 bucket prefix), :mod:`.mirror` (a store plus a second copy elsewhere); what they
share: :mod:`.records` (ids, metadata) and :mod:`.spool` (partial archives). Encryption: :mod:`.age`.
"""

from .folder import FolderStore
from .records import check_id, make_id, meta_is_sound
from .volume import VolumeStore
from .base import HERE, OFF, ArchiveWriter, Store, location_of, open_writer
from .mirror import MirroredStore
from .s3 import S3Store, is_s3_url

__all__ = [
    "ArchiveWriter", "FolderStore", "HERE", "MirroredStore", "OFF", "S3Store", "Store", "VolumeStore",
    "check_id", "is_s3_url", "location_of", "make_id", "meta_is_sound", "open_writer",
]
