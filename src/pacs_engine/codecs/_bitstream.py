"""Pass-through decoders: the chunk is a frame's original DICOM bitstream, decoded like pydicom."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, NoReturn

if TYPE_CHECKING:
    import numpy as np

from pacs_engine.codecs._base import (
    CodecError,
    FrameCodec,
    NoDecoderError,
    cast_exact,
    config_value,
    correct_unused_bits,
    unused_bits,
)

YBR_FULL_FAMILY = ("YBR_FULL", "YBR_FULL_422")
COLOR_CONVERSIONS = ("ybr_full_to_rgb", "none")
DECODERS = ("imagecodecs", "pydicom")


def default_color_conversion(photometric_interpretation: str) -> str:
    """What pydicom's pixel_array does by default: YBR_FULL(_422) becomes RGB, else nothing."""
    return "ybr_full_to_rgb" if photometric_interpretation in YBR_FULL_FAMILY else "none"


def pixel_dtype(bits_allocated: int, pixel_representation: int) -> np.dtype:
    """The numpy dtype pydicom gives for (Bits Allocated, Pixel Representation)."""
    import numpy as np

    if bits_allocated == 1:  # segmentations: pydicom unpacks the bits, one uint8 per pixel
        return np.dtype(np.uint8)
    if bits_allocated not in (8, 16, 32):
        raise CodecError(f"pass-through frames need Bits Allocated 1/8/16/32, not {bits_allocated}")
    kind = "i" if pixel_representation else "u"
    return np.dtype(f"{kind}{bits_allocated // 8}")


def sign_correct_j2k(
    decoded: np.ndarray, is_signed: bool, precision: int, bc: BitstreamCodec
) -> np.ndarray:
    """pydicom's JPEG 2000 sign correction: fix a codestream whose signedness disagrees."""
    import numpy as np

    arr = decoded.astype(bc.pixel_dtype)
    monochrome = bc.photometric_interpretation in ("MONOCHROME1", "MONOCHROME2")
    shift = 8 * arr.dtype.itemsize - precision
    if monochrome and shift and is_signed != bool(bc.pixel_representation):
        # Shift up then back down: arithmetic for signed dtypes (sign-extends from
        # `precision`), logical for unsigned ones (drops the sign bits), as pydicom does.
        arr = np.right_shift(np.left_shift(arr, shift), shift)
    return arr


@dataclass(frozen=True, eq=False)
class BitstreamCodec(FrameCodec):
    """Base of the pass-through decoders; its configuration is the frame's DICOM pixel module.

    ``decoder="imagecodecs"`` is the fast path, allowed only for transfer syntaxes whose
    decoded values are fixed by the standard (lossless ones, and integer-exact JPEG-LS
    near-lossless) and only without a YBR_FULL conversion; everything else is decoded with
    pydicom's own decoder so that the pixels equal pydicom's ``pixel_array``.
    """

    # Transfer syntaxes where the imagecodecs path is exact (checked on the corpus by tests).
    fast_syntaxes: ClassVar[tuple[str, ...]] = ()
    supported_dtypes: ClassVar[frozenset[str]] = frozenset({"u1", "i1", "u2", "i2", "u4", "i4"})
    # The fast decoder is another implementation than pydicom's, and on damaged streams the
    # two give different pixels without an error (measured: JPEG lossless, HTJ2K), so the
    # ingest decodes with both (`decode_checked`).
    cross_checked: ClassVar[bool] = False
    # Retired transfer syntaxes pydicom has no decoder for by UID, with the syntax whose
    # decoder reads their bitstreams (its plugin, libjpeg, implements every JPEG process).
    decoded_as: ClassVar[dict[str, str]] = {}
    # Whether the decoder gives YBR_FULL(_422) frames as RGB, as pydicom's pixel_array does
    # by default (`default_color_conversion`); a decoder of native samples gives them as
    # they are, so its conversion is "none" unless the configuration says otherwise.
    converts_ybr: ClassVar[bool] = True
    # Whether pydicom corrects the bits above Bits Stored of the decoded frames (all but
    # JPEG-LS and JPEG 2000, whose signs it corrects instead: their decoders give the
    # values the bitstream holds).
    corrects_unused_bits: ClassVar[bool] = True

    transfer_syntax_uid: str
    photometric_interpretation: str
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    samples_per_pixel: int
    planar_configuration: int
    color_conversion: str
    decoder: str

    def __init__(
        self,
        *,
        transfer_syntax_uid: str,
        photometric_interpretation: str,
        bits_allocated: int,
        bits_stored: int,
        pixel_representation: int = 0,
        samples_per_pixel: int = 1,
        planar_configuration: int = 0,
        color_conversion: str | None = None,
        decoder: str | None = None,
    ) -> None:
        if transfer_syntax_uid not in self.transfer_syntaxes:
            raise CodecError(
                f"{self.codec_name} does not decode transfer syntax {transfer_syntax_uid}"
            )
        if color_conversion is None:
            converted = default_color_conversion(photometric_interpretation)
            color_conversion = converted if self.converts_ybr else "none"
        config_value(color_conversion, COLOR_CONVERSIONS, "color_conversion")
        fast_ok = (
            transfer_syntax_uid in self.fast_syntaxes
            and photometric_interpretation not in YBR_FULL_FAMILY
            and int(bits_allocated) != 1  # pydicom's unpacked bits are the reference
        )
        if decoder is None:
            decoder = "imagecodecs" if fast_ok else "pydicom"
        config_value(decoder, DECODERS, "decoder")
        if decoder == "imagecodecs" and not fast_ok:
            raise CodecError(
                f"{self.codec_name}: only pydicom's decoder is exact for {transfer_syntax_uid} "
                f"with {photometric_interpretation}"
            )
        pixel_dtype(int(bits_allocated), int(pixel_representation))  # validates
        values = {
            "transfer_syntax_uid": str(transfer_syntax_uid),
            "photometric_interpretation": str(photometric_interpretation),
            "bits_allocated": int(bits_allocated),
            "bits_stored": int(bits_stored),
            "pixel_representation": int(pixel_representation),
            "samples_per_pixel": int(samples_per_pixel),
            "planar_configuration": int(planar_configuration),
            "color_conversion": color_conversion,
            "decoder": decoder,
        }
        for name, value in values.items():
            object.__setattr__(self, name, value)

    @property
    def pydicom_syntax(self) -> str:
        """The transfer syntax whose pydicom decoder reads these frames (`decoded_as`)."""
        return self.decoded_as.get(self.transfer_syntax_uid, self.transfer_syntax_uid)

    @property
    def pixel_dtype(self) -> np.dtype:
        """The dtype of the decoded frame, as pydicom's pixel_array gives it."""
        return pixel_dtype(self.bits_allocated, self.pixel_representation)

    def check_dtype(self, dtype: np.dtype) -> None:
        """Require the array dtype to be the one pydicom decodes these frames to."""
        if dtype != self.pixel_dtype:
            raise CodecError(
                f"{self.codec_name}: frames decode to {self.pixel_dtype}, the array is {dtype}"
            )

    def check_bitstream(self, data: bytes) -> None:
        """Raise CodecError unless `data` is a bitstream of this codec's family."""
        raise NotImplementedError

    def declared_shape(self, data: bytes) -> tuple[int, int, int] | None:
        """(rows, columns, samples) the bitstream's own header declares (None: it has none)."""
        return None

    def is_lossless(self, data: bytes) -> bool:
        """Whether the bitstream itself is lossless, whatever its transfer syntax says (a
        lossless syntax's UID may carry a near-lossless or irreversible stream): only then
        may a transcode keep its decoded pixels instead of it. CodecError when unreadable."""
        return True

    def check_size(self, data: bytes, shape: tuple[int, ...]) -> None:
        """Raise CodecError unless the bitstream declares the frame shape the data set does.

        Decoders allocate what the bitstream declares, so this runs before any decoding:
        a 180 KB stream can declare 65535 x 65535 pixels.
        """
        declared = self.declared_shape(data)
        expected = (shape[0], shape[1], shape[2] if len(shape) > 2 else 1)
        if declared is not None and declared[0] == 0:  # JPEG's rows may come later (DNL)
            declared = (expected[0], *declared[1:])
        if declared is not None and declared != expected:
            raise CodecError(
                f"{self.codec_name}: the bitstream declares {_describe(declared)}, "
                f"the data set {_describe(expected)}"
            )

    def encode_bitstream(self, data: bytes) -> bytes:
        """The chunk bytes for an original compressed frame: `data` itself, once checked."""
        data = bytes(data)
        self.check_bitstream(data)
        return data

    def encode_frame(self, frame: np.ndarray) -> NoReturn:
        """Refuse: a pass-through chunk is never produced by encoding pixels."""
        raise CodecError(
            f"{self.codec_name} stores original {self.transfer_syntax_uid} bitstreams; it cannot "
            "encode pixels. Write the frame's bytes with encode_bitstream() and pack_shard()."
        )

    def _decode_fast(self, data: bytes) -> np.ndarray:
        """The frame decoded with imagecodecs, corrected like pydicom (subclasses)."""
        raise NotImplementedError

    def _decode_pydicom(self, data: bytes, shape: tuple[int, ...], plugin: str = "") -> np.ndarray:
        """The frame decoded by pydicom's decoder for this transfer syntax (`plugin`: that
        plugin only; "": the first of its plugins that decodes it, as pixel_array does)."""
        from pydicom.encaps import encapsulate
        from pydicom.pixels import get_decoder

        options: dict[str, object] = {
            "rows": shape[0],
            "columns": shape[1],
            "samples_per_pixel": self.samples_per_pixel,
            "bits_allocated": self.bits_allocated,
            "bits_stored": self.bits_stored,
            "pixel_representation": self.pixel_representation,
            "photometric_interpretation": self.photometric_interpretation,
            "number_of_frames": 1,
            "as_rgb": self.color_conversion == "ybr_full_to_rgb",
        }
        if self.samples_per_pixel > 1:
            options["planar_configuration"] = self.planar_configuration
        if plugin:
            options["decoding_plugin"] = plugin
        decoder = get_decoder(self.pydicom_syntax)
        # Mixed-type options for as_array's **kwargs: mypy checks them against its typed keywords.
        arr, _ = decoder.as_array(encapsulate([bytes(data)]), **options)  # type: ignore[arg-type]
        return arr

    def missing_decoder(self) -> str | None:
        """Why no installed decoder reads these frames (None: one does)."""
        if self.decoder != "pydicom":
            return None
        from pydicom.pixels import get_decoder

        try:
            found = get_decoder(self.pydicom_syntax)
        except NotImplementedError:
            return "pydicom has none"
        return None if found.is_available else "pydicom's decoder plugins are not installed"

    def check_decoder(self) -> None:
        """Raise NoDecoderError, naming the syntax and what is missing, when no decoder reads
        these frames (an instance archived as received, see docs/codecs.md)."""
        missing = self.missing_decoder()
        if missing is not None:
            from pydicom.uid import UID

            raise NoDecoderError(
                f"no decoder for {UID(self.transfer_syntax_uid).name}, Bits Allocated "
                f"{self.bits_allocated} ({missing})"
            )

    def decode_frame(self, data: bytes, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """The frame as pydicom's pixel_array gives it, checked against the array dtype."""
        import numpy as np

        self.check_size(data, shape)
        self.check_decoder()
        if self.decoder == "imagecodecs":
            decoded = self._decode_fast(data)
            wider = decoded.dtype.itemsize > self.pixel_dtype.itemsize
            if wider and decoded.size and int(decoded.max()) >> 8 * self.pixel_dtype.itemsize:
                # a 12-bit stream in a file of Bits Allocated 8: astype kept the low byte
                raise CodecError(
                    f"{self.codec_name}: the bitstream's samples do not fit Bits Allocated "
                    f"{self.bits_allocated}"
                )
            arr = decoded.astype(self.pixel_dtype, copy=False)
            # What pydicom's pixel_array does with the bits above Bits Stored (a signed
            # JPEG Lossless frame's 12-bit two's complement: 3098 is -998).
            if self.corrects_unused_bits:
                bits = unused_bits(self.bits_stored, self.pixel_representation, self.pixel_dtype)
                arr = correct_unused_bits(arr, bits)
        else:
            arr = self._decode_pydicom(data, shape)
        if arr.size != int(np.prod(shape)):
            raise CodecError(f"{self.codec_name}: decoded {arr.shape}, chunk is {shape}")
        return cast_exact(arr.reshape(shape), dtype)

    def decode_checked(self, data: bytes, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """`decode_frame`; for a `cross_checked` codec, pydicom's decoder must agree with it."""
        import numpy as np

        frame = self.decode_frame(data, shape, dtype)
        if self.decoder == "imagecodecs" and self.cross_checked:
            try:
                reference = self._decode_pydicom(data, shape)
            except Exception as error:  # a decoder's failure on bad data can be any exception
                raise CodecError(f"{self.codec_name}: pydicom cannot decode it: {error}") from None
            if reference.size != frame.size or not np.array_equal(reference.reshape(shape), frame):
                raise CodecError(
                    f"{self.codec_name}: imagecodecs and pydicom decode it to different pixels "
                    "(a damaged bitstream)"
                )
        return frame


def _describe(shape: tuple[int, int, int]) -> str:
    """'rows x columns x samples' for messages."""
    return f"{shape[0]} x {shape[1]} pixels x {shape[2]} samples"
