"""CT-like noise and smooth random fields."""

from __future__ import annotations

import numpy as np
import pytest

from AnomalyScoutLib.phantom.noise import ct_noise, smooth_field


def test_ct_noise_has_the_requested_sigma_and_no_mean():
    noise = ct_noise(np.random.default_rng(0), (4, 64, 64), (0.8, 0.8), 15.0)
    assert noise.std() == pytest.approx(15.0, rel=1e-3)
    assert abs(noise.mean()) < 0.5


def test_ct_noise_spectrum_peaks_near_the_requested_frequency_not_at_zero():
    spacing = 0.8
    noise = ct_noise(
        np.random.default_rng(1), (8, 128, 128), (spacing, spacing), 10.0, peak_cycles_per_mm=0.25
    )
    power = (np.abs(np.fft.fft2(noise, axes=(1, 2))) ** 2).mean(axis=0)
    f = np.fft.fftfreq(128, d=spacing)
    radius = np.hypot(f[:, None], f[None, :])
    bins = np.digitize(radius, np.linspace(0, radius.max(), 30))
    radial = np.array([power[bins == b].mean() for b in range(1, 30)])
    centres = np.linspace(0, radius.max(), 30)[:-1]
    assert 0.12 < centres[radial.argmax()] < 0.4
    assert radial[0] < 0.2 * radial.max()


def test_neighbouring_noise_pixels_are_correlated_as_in_ct_not_white():
    # At 0.8 mm pixels the NPS peak (0.25 cycles/mm) is well below Nyquist: neighbours share grain.
    noise = ct_noise(np.random.default_rng(2), (4, 64, 64), (0.8, 0.8), 10.0)
    lag1 = np.corrcoef(noise[:, :, :-1].ravel(), noise[:, :, 1:].ravel())[0, 1]
    assert lag1 > 0.15


def test_smooth_field_is_normalised_and_smoother_for_larger_scales():
    rng = np.random.default_rng(3)
    fine = smooth_field(rng, (16, 48, 48), (3.0, 1.0, 1.0), 2.0)
    coarse = smooth_field(rng, (16, 48, 48), (3.0, 1.0, 1.0), 10.0)
    for field in (fine, coarse):
        assert field.shape == (16, 48, 48)
        assert field.std() == pytest.approx(1.0, rel=1e-3)
    assert np.abs(np.diff(coarse, axis=2)).mean() < np.abs(np.diff(fine, axis=2)).mean()


def test_smooth_field_refuses_a_non_positive_scale():
    with pytest.raises(ValueError, match="scale_mm"):
        smooth_field(np.random.default_rng(0), (4, 4, 4), (1.0, 1.0, 1.0), 0.0)
