'use strict';

const REFRESH_MS = 60 * 1000;

async function fetchReadings(url) {
  const response = await fetch(url, { headers: { Accept: 'application/json' } });
  if (!response.ok) {
    throw new Error(`request failed: ${response.status}`);
  }
  return response.json();
}

function render(readings) {
  const table = document.getElementById('readings');
  table.innerHTML = '';
  for (const r of readings) {
    const row = document.createElement('tr');
    row.innerHTML = `<td>${r.sensor}</td><td>${r.value.toFixed(1)}</td>`;
    table.appendChild(row);
  }
}

function start() {
  const update = () =>
    fetchReadings('/api/v1/readings')
      .then(render)
      .catch((err) => console.error('update failed', err));
  update();
  setInterval(update, REFRESH_MS);
}

document.addEventListener('DOMContentLoaded', start);

module.exports = { fetchReadings, render };
