-- Video hash banks (vPDQ, moderation.core.vpdq): a bank entry may be one frame of a banked
-- video. Its video's key in the bank, the frame's number and timestamp, and how many frames of
-- that video take part in matching (quality >= 50, each hash once). NULL for photo entries.

ALTER TABLE bank_entries
    ADD COLUMN video        text,
    ADD COLUMN frame_number integer CHECK (frame_number >= 0),
    ADD COLUMN timestamp_s  double precision CHECK (timestamp_s >= 0),
    ADD COLUMN video_frames integer CHECK (video_frames >= 1);
CREATE INDEX bank_entries_video ON bank_entries (bank, video) WHERE video IS NOT NULL;
