"""TensorBoard as a WSGI app over a folder of runs, for the Modal ``tensorboard`` endpoint."""

from collections.abc import Callable
from typing import Any


def board_app(logdir: str, reload: Callable[[], None]) -> Callable:
    """TensorBoard over ``logdir`` that calls ``reload`` (the volume's) when the page is opened.

    ``load_fast="false"`` reads each events file and closes it: TensorBoard's default loader
    keeps them open, and a Modal ``Volume.reload()`` fails while a file on the volume is open.
    """
    from tensorboard import program
    from tensorboard.backend.application import TensorBoardWSGIApp

    board = program.TensorBoard()
    board.configure(logdir=logdir, load_fast="false")
    data_provider, multiplexer = board._make_data_provider()
    inner = TensorBoardWSGIApp(
        board.flags, board.plugin_loaders, data_provider, board.assets_zip_provider, multiplexer
    )

    def reloading(environ: dict, start_response: Callable) -> Any:
        if environ.get("PATH_INFO") == "/":
            try:
                reload()
            except Exception as err:  # the page still shows what the volume had
                print(f"tensorboard: volume not reloaded ({err}); showing what it had")
        return inner(environ, start_response)

    return reloading
