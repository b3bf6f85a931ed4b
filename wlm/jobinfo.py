"""What the prolog/epilog know about the job: id, node, user and its shifter request.

The request arrives through the job-control environment (``SPANK_SHIFTER_*``), set at
submission by the plugin after validation.
"""

from __future__ import annotations

import os
from shifter.frozen import frozen

from shifter.spank.handle import SpankHandle


@frozen
class JobInfo:
    job_id: int | None
    node: str
    uid: int | None
    gid: int | None
    image_type: str | None
    image: str | None
    request: str | None
    volume: str | None
    module: str | None
    ccm: bool

    def describe(self) -> str:
        return (
            f"job={self.job_id} node={self.node} uid={self.uid} "
            f"imagetype={self.image_type or '-'} image={self.image or '-'} request={self.request or '-'}"
        )


def from_spank(sp: SpankHandle, options: dict[str, str], environ=os.environ) -> JobInfo:
    node = environ.get("SLURMD_NODENAME") or os.uname().nodename
    return JobInfo(
        job_id=sp.job_id(),
        node=node,
        uid=sp.job_uid(),
        gid=sp.job_gid(),
        image_type=environ.get("SPANK_SHIFTER_IMAGETYPE") or None,
        image=environ.get("SPANK_SHIFTER_IMAGE") or None,
        request=environ.get("SPANK_SHIFTER_IMAGEREQUEST") or environ.get("SPANK_SHIFTER_IMAGE_REQUEST") or None,
        volume=environ.get("SPANK_SHIFTER_VOLUME") or options.get("volume"),
        module=environ.get("SPANK_SHIFTER_MODULE") or options.get("module"),
        ccm=environ.get("SPANK_SHIFTER_CCM") == "1" or "ccm" in options,
    )
