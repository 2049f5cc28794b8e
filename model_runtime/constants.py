"""Sentinel ids and placeholder strings shared by the model and the prompt builder (spec 1, 11.3).

Sentinels are never embedded: they mark where one media item's feature rows go. A video is one
image sentinel with modality "video" (ORIG); audio has its own sentinel.
"""

IGNORE_INDEX = -100
IMAGE_TOKEN_INDEX = -200
AUDIO_TOKEN_INDEX = -300

IMAGE_PLACEHOLDER = "<image>"
VIDEO_PLACEHOLDER = "<video>"
AUDIO_PLACEHOLDER = "<audio>"

# placeholder string -> sentinel id
SENTINEL_BY_PLACEHOLDER = {
    IMAGE_PLACEHOLDER: IMAGE_TOKEN_INDEX,
    VIDEO_PLACEHOLDER: IMAGE_TOKEN_INDEX,
    AUDIO_PLACEHOLDER: AUDIO_TOKEN_INDEX,
}
# modality -> sentinel id
SENTINEL_BY_MODALITY = {"image": IMAGE_TOKEN_INDEX, "video": IMAGE_TOKEN_INDEX, "audio": AUDIO_TOKEN_INDEX}
PLACEHOLDER_BY_MODALITY = {"image": IMAGE_PLACEHOLDER, "video": VIDEO_PLACEHOLDER, "audio": AUDIO_PLACEHOLDER}
