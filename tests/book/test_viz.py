import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from mmcourse.book.viz import attention_grid, attention_heatmap, plot_losses, smooth, use_style  # noqa: E402


def teardown_function() -> None:
    plt.close("all")


def test_plot_losses_draws_curves_and_baselines() -> None:
    use_style()
    ax = plot_losses({"train": [3.0, 2.0, 1.0], "validation": ([1, 3], [2.5, 1.5])}, baselines={"ln V": 4.2})
    assert len(ax.lines) == 3
    np.testing.assert_allclose(ax.lines[1].get_xdata(), [1, 3])
    assert ax.lines[2].get_ydata()[0] == 4.2
    with pytest.raises(ValueError, match="'bad': 2 steps but 3 values"):
        plot_losses({"bad": ([1, 2], [1.0, 2.0, 3.0])})
    with pytest.raises(ValueError, match="series is empty"):
        plot_losses({})


def test_smooth_is_a_moving_average() -> None:
    np.testing.assert_allclose(smooth([1.0, 3.0, 5.0, 7.0], 2), [1.0, 2.0, 4.0, 6.0])
    with pytest.raises(ValueError, match="window"):
        smooth([1.0], 0)


def test_attention_plots_check_shapes() -> None:
    weights = torch.softmax(torch.randn(3, 4), dim=-1)
    ax = attention_heatmap(weights, x_labels=list("abcd"), y_labels=list("xyz"))
    assert ax.images[0].get_array().shape == (3, 4)
    with pytest.raises(ValueError, match="x_labels has 2 labels for 4 keys"):
        attention_heatmap(weights, x_labels=["a", "b"])
    with pytest.raises(ValueError, match="must be 2-D"):
        attention_heatmap(torch.rand(2, 3, 4))
    figure = attention_grid(torch.rand(2, 3, 5, 5))
    assert len(figure.axes) == 6
    with pytest.raises(ValueError, match=r"\(layers, heads, queries, keys\)"):
        attention_grid(torch.rand(3, 5, 5))


def test_zero_shot_figure_draws_an_image_and_bars_per_row() -> None:
    from mmcourse.book.viz import zero_shot_figure

    probabilities = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    figure = zero_shot_figure(torch.rand(2, 3, 8, 8), ["a", "b", "c"], probabilities, titles=["first", "second"])
    assert len(figure.axes) == 4
    assert [patch.get_width() for patch in figure.axes[3].patches] == pytest.approx([0.1, 0.1, 0.8])
    with pytest.raises(ValueError, match="probabilities"):
        zero_shot_figure(torch.rand(2, 3, 8, 8), ["a", "b"], probabilities)
    with pytest.raises(ValueError, match="images"):
        zero_shot_figure(torch.rand(2, 8, 8), ["a", "b", "c"], probabilities)
    plt.close(figure)
