// The before/after view: the model's output with the input laid over it, both stretched
// to one box, so the same region of the picture is compared; the browser's own resize of
// the input is the "before". A range input over the whole box moves the divider, by
// pointer (anywhere on the picture) or by keyboard (arrows, Page Up/Down, Home, End).

export function setupCompare(root, { name, width, height }) {
  const box = root.querySelector(".compare");
  const before = root.querySelector(".before");
  const divider = root.querySelector(".divider");
  const slider = root.querySelector(".slider");
  const zoom = root.querySelector(".zoom");
  const frame = root.querySelector(".frame");

  box.style.aspectRatio = width + " / " + height;
  slider.setAttribute("aria-label", "Before/after divider for " + name);

  function place() {
    const share = Number(slider.value);
    // styles set through the CSSOM are allowed by the page's CSP (no inline style attributes)
    before.style.clipPath = "inset(0 " + (100 - share) + "% 0 0)";
    divider.style.left = share + "%";
    slider.setAttribute(
      "aria-valuetext",
      share + "% before (the input, resized), " + (100 - share) + "% after (the model)",
    );
  }

  function scale() {
    // actual pixels: one output pixel per CSS pixel, scrolled inside the frame
    box.style.width = zoom.checked ? width + "px" : "";
    // fitted: the whole picture within the frame's height, whatever its shape
    box.style.maxWidth = zoom.checked ? "none" : "calc(75vh * " + (width / height).toFixed(4) + ")";
    frame.classList.toggle("zoomed", zoom.checked);
  }

  slider.addEventListener("input", place);
  zoom.addEventListener("change", scale);
  place();
  scale();
}

export function showImages(root, { beforeUrl, afterUrl }) {
  const before = root.querySelector(".before");
  const after = root.querySelector(".after");
  after.src = afterUrl;
  if (beforeUrl) {
    before.src = beforeUrl;
    before.hidden = false;
  } else {
    before.hidden = true;
  }
  for (const part of root.querySelectorAll(".divider, .tag, .slider")) part.hidden = !beforeUrl;
}
