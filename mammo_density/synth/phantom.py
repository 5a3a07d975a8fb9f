"""Synthetic breast images: outline, skin line, pectoral muscle, fibroglandular texture.

Everything here is drawn in a *canonical* frame: the chest wall along the RIGHT edge of the
image (last column), the nipple pointing left, the top row cranial (MLO) or lateral (CC).
:mod:`mammo_density.synth.dicom` mirrors the canonical image where the laterality asks for
it and writes the matching PatientOrientation (see :func:`chest_wall_on_right`).

Values are *display* values in [0, 1]: 0 is no attenuation (background, shown black), higher
is denser tissue (shown brighter). Background is exactly 0; every breast pixel is > 0.

Density follows BI-RADS as a *fraction and pattern* of fibroglandular tissue, not as a
global brightness: band-limited noise (Gaussian-filtered white noise at a scale that depends
on the class: fine strands for A, scattered patches for B, large clumps for C, confluent for
D) plus a subareolar bias, thresholded so the glandular share of the breast equals the
requested fraction. Fat level, gland contrast, skin falloff and gain vary per image, so the
mean brightness of the breast is a weak cue for the class.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

#: Working resolution: images are drawn with at most this many rows, then resized.
WORK_ROWS = 512

#: Texture scale (Gaussian sigma, mm) of the fibroglandular pattern per class, and the
#: weight of the fine (2 mm) component; chosen so the pattern itself tells the class.
CLASS_TEXTURE_MM: dict[str, tuple[float, float]] = {
    "A": (2.2, 0.8),
    "B": (3.5, 0.5),
    "C": (6.5, 0.25),
    "D": (9.0, 0.15),
}


@dataclass
class RenderedView:
    """One drawn view in the canonical frame."""

    image: np.ndarray  # float32 display values, 0 = background
    mask: np.ndarray  # bool, breast (including pectoral and skin)
    pectoral: np.ndarray  # bool, pectoral muscle
    glandular_fraction: float  # measured share of glandular pixels in breast minus pectoral


def chest_wall_on_right(patient_orientation_row: str) -> bool:
    """Whether the chest wall lies on the image's right edge.

    DICOM PatientOrientation (0020,0020) value 1 is the patient direction of the image's
    rows (left to right), value 2 that of the columns (top to bottom). Mammograms are
    written in the conventional display orientation: R CC ``P\\L``, L CC ``A\\R``,
    R MLO ``P\\F``, L MLO ``A\\F`` (IHE Mammography Image profile). Moving right along a
    row of an image with row direction ``P`` moves towards the patient's back, so the
    chest wall is at the right edge; with ``A`` it is at the left edge. For CC the top
    of the image is lateral (value 2 is ``L`` for a right breast, ``R`` for a left one);
    for MLO it is cranial (``F``: top to bottom goes towards the feet), so the pectoral
    muscle and axilla sit in the top chest-wall corner.
    """
    first = patient_orientation_row.upper()[:1]
    if first == "P":
        return True
    if first == "A":
        return False
    raise ValueError(f"row direction {patient_orientation_row!r} is neither A nor P")


def patient_orientation(laterality: str, view: str) -> list[str]:
    """Conventional PatientOrientation for a laterality (R/L) and view (CC, MLO, XCCL...)."""
    row = "P" if laterality == "R" else "A"
    lateral_up = "L" if laterality == "R" else "R"
    col = "F" if view in {"MLO", "ML", "LM", "LMO"} else lateral_up
    return [row, col]


def mirrored(view: RenderedView) -> RenderedView:
    """The view mirrored left-right (chest wall moves to the other edge)."""
    return RenderedView(image=np.ascontiguousarray(view.image[:, ::-1]),
                        mask=np.ascontiguousarray(view.mask[:, ::-1]),
                        pectoral=np.ascontiguousarray(view.pectoral[:, ::-1]),
                        glandular_fraction=view.glandular_fraction)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma_px: float) -> np.ndarray:
    """Zero-mean, unit-variance Gaussian-filtered white noise (band-limited texture)."""
    white = rng.standard_normal(shape).astype(np.float32)
    if sigma_px > 0.3:
        # filter a downsampled field for large sigmas: same spectrum, far fewer operations
        step = max(1, int(sigma_px // 3))
        if step > 1:
            small = rng.standard_normal(
                (shape[0] // step + 2, shape[1] // step + 2)).astype(np.float32)
            small = cv2.GaussianBlur(small, (0, 0), sigma_px / step)
            white = cv2.resize(small, (shape[1] + 2 * step, shape[0] + 2 * step),
                               interpolation=cv2.INTER_LINEAR)[step:step + shape[0],
                                                               step:step + shape[1]]
        else:
            white = cv2.GaussianBlur(white, (0, 0), sigma_px)
    white -= white.mean()
    std = float(white.std())
    return white / std if std > 0 else white


def _outline(rng: np.random.Generator, rows: int, cols: int, view: str,
             px_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Breast mask and pectoral mask in the canonical frame (chest wall at the right)."""
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
    u = (cols - 1 - xx) / cols  # 0 at the chest wall, grows towards the nipple
    v = yy / rows
    wobble = _smooth_noise(rng, (rows, cols), 25.0 / px_mm) * 0.025
    pectoral = np.zeros((rows, cols), bool)
    if view in {"MLO", "ML", "LM"}:
        depth = rng.uniform(0.55, 0.78)
        centre = rng.uniform(0.5, 0.58)
        half = rng.uniform(0.40, 0.46)
        r = np.sqrt((u / depth) ** 2 + ((v - centre) / half) ** 2)
        p_u = rng.uniform(0.22, 0.38)  # pectoral width at the top row (share of columns)
        p_v = rng.uniform(0.40, 0.65)  # pectoral length along the chest wall (share of rows)
        tail = u / (p_u * 1.35) + v / (p_v * 1.2) < 1.0  # axillary tail around the muscle
        mask = (r < 1.0 + wobble) | tail
        # round the corner where the axillary tail meets the breast outline
        soft = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 12.0 / px_mm)
        mask = soft > 0.5
        pectoral = (u / p_u + v / p_v < 1.0 + 0.4 * wobble) & mask
    else:
        depth = rng.uniform(0.48, 0.75)
        centre = rng.uniform(0.45, 0.55) - (0.08 if view == "XCCL" else 0.0)
        half = rng.uniform(0.30, 0.42)
        r = np.sqrt((u / depth) ** 2 + ((v - centre) / half) ** 2)
        mask = r < 1.0 + wobble
    return mask, pectoral


def render_view(rng: np.random.Generator, shape: tuple[int, int], spacing_mm: float,
                view: str, density: str, glandular_fraction: float,
                spot: bool = False) -> RenderedView:
    """Draw one view in the canonical frame at ``shape`` (rows, columns).

    Parameters
    ----------
    rng : numpy Generator; all randomness comes from it (determinism).
    shape : output rows and columns.
    spacing_mm : pixel spacing of the output image.
    view : "CC", "MLO" or "XCCL".
    density : BI-RADS class "A"-"D" (selects the texture scale).
    glandular_fraction : share of the breast (minus pectoral) to draw as glandular tissue.
    spot : spot-compression look (magnified texture, no pectoral).
    """
    rows, cols = shape
    div = max(1, int(np.ceil(rows / WORK_ROWS)))
    wr, wc = max(32, rows // div), max(26, cols // div)
    px_mm = spacing_mm * rows / wr  # mm per working pixel
    if spot:
        px_mm /= 1.8  # the paddle magnifies: same physical pattern spans more pixels

    mask, pectoral = _outline(rng, wr, wc, "CC" if spot else view, px_mm)
    mask_u8 = mask.astype(np.uint8)
    dist_mm = cv2.distanceTransform(mask_u8, cv2.DIST_L2, 5) * px_mm

    # fibroglandular score: band-limited noise + subareolar bias - peripheral fat
    sigma_mm, fine_w = CLASS_TEXTURE_MM[density]
    sigma_mm *= rng.uniform(0.85, 1.2)
    score = _smooth_noise(rng, (wr, wc), sigma_mm / px_mm)
    score += fine_w * _smooth_noise(rng, (wr, wc), 1.2 / px_mm)
    yy, xx = np.mgrid[0:wr, 0:wc].astype(np.float32)
    u = (wc - 1 - xx) / wc
    cols_in = mask.any(axis=0)
    depth = max(float(u[0, cols_in].max()) if cols_in.any() else 0.5, 0.1)
    rows_in = np.nonzero(mask.any(axis=1))[0]
    centre_v = float(rows_in.mean()) / wr if rows_in.size else 0.5
    bias = np.exp(-(((u - 0.42 * depth) / (0.45 * depth)) ** 2)
                  - (((yy / wr) - centre_v) / 0.32) ** 2)
    score += 1.3 * bias
    score -= 1.5 * np.exp(-dist_mm / 6.0)  # subcutaneous fat under the skin

    tissue = mask & ~pectoral
    target = float(np.clip(glandular_fraction, 0.005, 0.995))
    values = score[tissue]
    thr = float(np.quantile(values, 1.0 - target)) if values.size else 0.0
    soft = 0.12
    gland = 1.0 / (1.0 + np.exp(np.clip(-(score - thr) / soft, -50.0, 50.0)))
    measured = float((score[tissue] > thr).mean()) if values.size else 0.0

    # intensities (display sense): per-image processing makes mean brightness unreliable
    fat = rng.uniform(0.10, 0.55)
    contrast = min(rng.uniform(0.16, 0.55), 0.97 - fat)
    edge_mm = rng.uniform(4.0, 20.0)
    falloff = np.clip(dist_mm / edge_mm, 0.0, 1.0) ** rng.uniform(0.4, 0.9)
    ligaments = 0.03 * _smooth_noise(rng, (wr, wc), 0.8 / px_mm)
    gland_tex = 0.85 + 0.15 * _smooth_noise(rng, (wr, wc), 1.5 / px_mm)
    # glandular tissue is not equally bright everywhere: a slow random level field
    level = rng.uniform(0.55, 0.95) + rng.uniform(0.1, 0.3) * _smooth_noise(
        rng, (wr, wc), 20.0 / px_mm)
    gland_tex = gland_tex * np.clip(level, 0.3, 1.0)
    # slow brightness ramp (heel effect, thickness change, processing), random direction
    angle = rng.uniform(0.0, 2.0 * np.pi)
    ramp = (np.cos(angle) * (xx / wc - 0.5) + np.sin(angle) * (yy / wr - 0.5))
    shading = 1.0 + rng.uniform(0.0, 0.35) * ramp
    img = falloff * shading * (fat + ligaments + contrast * gland * gland_tex)
    skin_mm = 1.6
    skin = (dist_mm > 0) & (dist_mm < skin_mm / 1.0)
    img = np.where(skin, np.maximum(img, 0.55 * fat + 0.05), img)
    if pectoral.any():
        pect_level = fat + contrast * rng.uniform(0.85, 1.1)
        pect = pect_level * (0.93 + 0.05 * _smooth_noise(rng, (wr, wc), 4.0 / px_mm))
        pdist = cv2.distanceTransform(pectoral.astype(np.uint8), cv2.DIST_L2, 5) * px_mm
        w = np.clip(pdist / 2.0, 0.0, 1.0)
        img = np.where(pectoral, (1 - w) * img + w * pect, img)

    if (wr, wc) != (rows, cols):
        img = cv2.resize(img.astype(np.float32), (cols, rows), interpolation=cv2.INTER_LINEAR)
        # linear interpolation + threshold keeps the skin line smooth (no 8-pixel steps)
        mask = cv2.resize(mask.astype(np.float32), (cols, rows),
                          interpolation=cv2.INTER_LINEAR) > 0.5
        pectoral = (cv2.resize(pectoral.astype(np.float32), (cols, rows),
                               interpolation=cv2.INTER_LINEAR) > 0.5) & mask
    # detector noise (quantum-like: grows with signal), only inside the breast
    noise = rng.standard_normal((rows, cols)).astype(np.float32)
    img = img + noise * (0.006 + 0.012 * np.sqrt(np.clip(img, 0, None)))
    img = np.where(mask, np.clip(img, 1e-3, 1.0), 0.0).astype(np.float32)
    return RenderedView(image=img, mask=mask, pectoral=pectoral, glandular_fraction=measured)
