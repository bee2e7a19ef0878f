// The console's calls to the business API: JSON in and out, with the API token as a bearer
// header. The token lives in this tab's sessionStorage only (it goes when the tab closes) and
// never in a URL; a 401 forgets it, so the page asks again.

const TOKEN_KEY = 'galopush-console-token';

/** The API refused the token (or its absence): `401`. */
export class Unauthorized extends Error {
  constructor() {
    super('the API refused the token');
    this.name = 'Unauthorized';
  }
}

/** An answer other than 2xx or 401, with the API's reason as the message. */
export class ApiError extends Error {
  /**
   * @param {number} status
   * @param {string} reason
   */
  constructor(status, reason) {
    super(`${status}: ${reason || 'no reason given'}`);
    this.name = 'ApiError';
    this.status = status;
  }
}

/** The business API at the page's own origin. */
export class Api {
  /** The token in use, or '' when the API asked for none. */
  get token() {
    return sessionStorage.getItem(TOKEN_KEY) ?? '';
  }

  /** @param {string} token */
  set token(token) {
    if (token) {
      sessionStorage.setItem(TOKEN_KEY, token);
    } else {
      sessionStorage.removeItem(TOKEN_KEY);
    }
  }

  /**
   * @param {string} path
   * @returns {Promise<any>} the parsed JSON
   */
  async get(path) {
    return this.#call('GET', path);
  }

  /**
   * @param {string} path
   * @param {string} [body]
   * @returns {Promise<any>} the parsed JSON, or the text when the answer is not JSON
   */
  async post(path, body) {
    return this.#call('POST', path, body);
  }

  /**
   * @param {string} method
   * @param {string} path
   * @param {string} [body]
   */
  async #call(method, path, body) {
    const headers = new Headers();
    if (this.token) headers.set('Authorization', `Bearer ${this.token}`);
    const response = await fetch(path, { method, headers, body, cache: 'no-store' });
    if (response.status === 401) {
      this.token = '';
      throw new Unauthorized();
    }
    const text = await response.text();
    if (!response.ok) throw new ApiError(response.status, text.trim());
    const type = response.headers.get('Content-Type') ?? '';
    return type.startsWith('application/json') ? JSON.parse(text) : text;
  }
}
