"""The placeholder tokens a conversation uses where its media go: converters check that each
medium has one, ``verify`` checks written samples the same way. A module of its own so that
``verify`` and ``inspect`` need not import the conversion stack (polars, pyarrow) to know them."""

IMAGE_TOKEN = "<image>"
VIDEO_TOKEN = "<video>"
MEDIA_TOKENS = {"image": IMAGE_TOKEN, "video": VIDEO_TOKEN}
